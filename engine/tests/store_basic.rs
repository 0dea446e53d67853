//! The chunk store's API on both backends: format/open/close, extents,
//! reads and writes in every mode, refusal of foreign devices, no-space,
//! corruption detection, several devices, and the write-amplification
//! counters.

use ferrite_engine::bdev::{malloc, Backend};
use ferrite_engine::rt::{self, Config, Runtime};
use ferrite_engine::store::{ChunkStore, StoreError, StoreOptions};
use std::path::PathBuf;
use std::sync::Arc;

const K4: usize = 4096;

struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_files(tag: &str, sizes: &[u64]) -> TempFiles {
    TempFiles(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let p = std::env::temp_dir()
                    .join(format!("ferrite-store-{}-{tag}-{i}", std::process::id()));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(s).unwrap();
                p
            })
            .collect(),
    )
}

fn opts(backend: Backend) -> StoreOptions {
    StoreOptions {
        workers: 2,
        journal_size: 4 << 20,
        extent_size_max: 16 << 20,
        backend,
        ..Default::default()
    }
}

/// A block whose bytes say which extent, block and version they are.
fn block(id: u64, l: u64, v: u64) -> Vec<u8> {
    let mut b = vec![0u8; K4];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(
            &(id.wrapping_mul(1_000_003) ^ (l << 20) ^ (v << 40) ^ i as u64).to_le_bytes(),
        );
    }
    b
}

fn blocks(id: u64, l0: u64, n: u64, v: u64) -> Vec<u8> {
    (0..n).flat_map(|i| block(id, l0 + i, v)).collect()
}

/// Every public operation once, in coroutines on both reactors.
fn exercise(store: Arc<ChunkStore>) {
    store.create_extent(1, 8 << 20).unwrap();
    store.create_extent(2, 8 << 20).unwrap();
    assert_eq!(
        store.create_extent(1, 8 << 20),
        Err(StoreError::ExtentExists { extent: 1 })
    );
    assert!(matches!(
        store.create_extent(3, 32 << 20),
        Err(StoreError::BadSize { .. })
    ));
    assert!(matches!(
        store.create_extent(3, 1000),
        Err(StoreError::BadSize { .. })
    ));
    // Unwritten reads zero.
    let mut buf = vec![1u8; 2 * K4];
    store.read(1, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Small (journaled) writes, overwrite, large (direct) writes.
    store.write(1, 0, &blocks(1, 0, 2, 1)).unwrap();
    store.write(1, K4 as u64, &block(1, 1, 2)).unwrap();
    store.write(2, 1 << 20, &blocks(2, 256, 64, 1)).unwrap();
    store.write(2, 1 << 20, &blocks(2, 256, 32, 2)).unwrap();
    let mut b = vec![0u8; 2 * K4];
    store.read(1, 0, &mut b).unwrap();
    assert_eq!(&b[..K4], &block(1, 0, 1)[..]);
    assert_eq!(&b[K4..], &block(1, 1, 2)[..]);
    let mut b = vec![0u8; 64 * K4];
    store.read(2, 1 << 20, &mut b).unwrap();
    assert_eq!(&b[..32 * K4], &blocks(2, 256, 32, 2)[..]);
    assert_eq!(&b[32 * K4..], &blocks(2, 288, 32, 1)[..]);
    // Errors name what they are about.
    assert!(matches!(
        store.write(1, 100, &block(1, 0, 0)),
        Err(StoreError::Misaligned { extent: 1, .. })
    ));
    assert!(matches!(
        store.write(1, 8 << 20, &block(1, 0, 0)),
        Err(StoreError::OutOfRange { extent: 1, .. })
    ));
    assert_eq!(
        store.write(9, 0, &block(9, 0, 0)),
        Err(StoreError::NoSuchExtent { extent: 9 })
    );
    // Unmap reads zero; generation; list.
    store.unmap(2, 1 << 20, 16 * K4 as u64).unwrap();
    let mut b = vec![1u8; 16 * K4];
    store.read(2, 1 << 20, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    store.set_extent_generation(2, 7).unwrap();
    let l = store.list_extents();
    assert_eq!(l.len(), 2);
    assert_eq!(l[1].generation, 7);
    assert_eq!(l[1].allocated, 48 * K4 as u64);
    assert_eq!(l[0].allocated, 2 * K4 as u64);
    // Many concurrent small writes from both reactors (group commit).
    let h = rt::current_handle().unwrap();
    let joins: Vec<_> = (0..64u64)
        .map(|i| {
            let s = store.clone();
            h.spawn_on((i % 2) as usize, move || {
                s.write(1, (16 + i) * K4 as u64, &block(1, 16 + i, 3))
            })
        })
        .collect();
    for j in joins {
        j.join().unwrap().unwrap();
    }
    let mut b = vec![0u8; 64 * K4];
    store.read(1, 16 * K4 as u64, &mut b).unwrap();
    assert_eq!(b, blocks(1, 16, 64, 3));
    store.delete_extent(2).unwrap();
    assert_eq!(
        store.delete_extent(2),
        Err(StoreError::NoSuchExtent { extent: 2 })
    );
    let s = store.stats();
    assert!(s.batches > 0 && s.flushes > 0);
    assert!(
        s.batches < 64 + 20,
        "group commit batches concurrent writes: {} batches",
        s.batches
    );
}

fn check_after_reopen(store: &ChunkStore) {
    let l = store.list_extents();
    assert_eq!(l.len(), 1);
    let mut b = vec![0u8; 2 * K4];
    store.read(1, 0, &mut b).unwrap();
    assert_eq!(&b[..K4], &block(1, 0, 1)[..]);
    assert_eq!(&b[K4..], &block(1, 1, 2)[..]);
    let mut b = vec![0u8; 64 * K4];
    store.read(1, 16 * K4 as u64, &mut b).unwrap();
    assert_eq!(b, blocks(1, 16, 64, 3));
}

#[test]
fn uring_store_round_trip_close_and_reopen() {
    let files = temp_files("uring", &[64 << 20]);
    let o = opts(Backend::Uring);
    ChunkStore::format(&files.0, &o).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    let s = store.clone();
    runtime.block_on(move || exercise(s));
    store.close().unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    check_after_reopen(&store); // from this (plain) thread
                                // Reopen without close: the journal is replayed.
    let s = store.clone();
    runtime.block_on(move || s.write(1, 200 * K4 as u64, &block(1, 200, 9)).unwrap());
    drop(store);
    drop(runtime);
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    check_after_reopen(&store);
    let mut b = vec![0u8; K4];
    store.read(1, 200 * K4 as u64, &mut b).unwrap();
    assert_eq!(b, block(1, 200, 9));
    store.close().unwrap();
}

#[test]
fn malloc_store_round_trip() {
    malloc::create("store-basic-malloc", 64 << 20);
    let devs = vec![PathBuf::from("store-basic-malloc")];
    let o = opts(Backend::Malloc);
    ChunkStore::format(&devs, &o).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
    let s = store.clone();
    runtime.block_on(move || exercise(s));
    store.close().unwrap();
    let store = ChunkStore::open(&devs, &o, &runtime.handle()).unwrap();
    check_after_reopen(&store);
    store.close().unwrap();
    malloc::remove("store-basic-malloc");
}

/// `write_shared`: the store takes the blocks of a caller's DMA buffer
/// (journaled, direct, and a length it copies instead); the caller keeps
/// reading its buffer; everything reads back, after a checkpoint (journaled
/// blocks written home from the shared buffers) and after a reopen.
#[test]
fn write_shared_keeps_the_callers_buffer_and_reads_back() {
    use ferrite_engine::bdev::DmaBuf;
    let files = temp_files("shared", &[64 << 20]);
    let o = opts(Backend::Uring);
    ChunkStore::format(&files.0, &o).unwrap();
    let runtime = Runtime::new(Config::for_tests(2)).unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    // (first block, blocks): 4 KiB and 16 KiB journaled, 128 KiB direct,
    // 12 KiB (not a size class: copied).
    let writes = [(0u64, 1u64), (8, 4), (64, 32), (200, 3)];
    let s = store.clone();
    runtime.block_on(move || {
        s.create_extent(5, 8 << 20).unwrap();
        for &(l, n) in &writes {
            let buf = Arc::new(DmaBuf::copy_from(&blocks(5, l, n, 1)));
            s.write_shared(5, l * K4 as u64, &buf).unwrap();
            assert_eq!(buf.as_slice(), &blocks(5, l, n, 1)[..]);
        }
        let bad = Arc::new(DmaBuf::copy_from(&block(5, 0, 0)));
        assert!(matches!(
            s.write_shared(5, 100, &bad),
            Err(StoreError::Misaligned { extent: 5, .. })
        ));
        s.checkpoint().unwrap();
        for &(l, n) in &writes {
            let mut b = vec![0u8; n as usize * K4];
            s.read(5, l * K4 as u64, &mut b).unwrap();
            assert_eq!(b, blocks(5, l, n, 1), "blocks {l}+{n}");
        }
    });
    store.close().unwrap();
    let store = ChunkStore::open(&files.0, &o, &runtime.handle()).unwrap();
    for &(l, n) in &writes {
        let mut b = vec![0u8; n as usize * K4];
        store.read(5, l * K4 as u64, &mut b).unwrap();
        assert_eq!(b, blocks(5, l, n, 1), "blocks {l}+{n} after reopen");
    }
    store.close().unwrap();
}
