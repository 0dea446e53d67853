//! The cleaner: once the store is idle it puts randomly rewritten extents
//! back in logical order and empties segments, without changing what any
//! block reads, across a reopen. Small writes scatter the layout either way
//! they are placed: journaled and relocated home, or logged (written once
//! to new blocks, the default).

use ferrite_engine::bdev::Backend;
use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::store::{ChunkStore, StoreOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const K4: u64 = 4096;
const EXT: u64 = 24 << 20;
const IDS: [u64; 3] = [1, 2, 3];

/// A block whose bytes say which extent, block and version they are.
fn block(id: u64, l: u64, v: u64) -> Vec<u8> {
    let mut b = vec![0u8; K4 as usize];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(id << 56 ^ l << 24 ^ v << 8 ^ i as u64).to_le_bytes());
    }
    b
}

fn verify(store: &ChunkStore, versions: &HashMap<(u64, u64), u64>) {
    let mut buf = vec![0u8; 1 << 20];
    for id in IDS {
        for off in (0..EXT).step_by(buf.len()) {
            store.read(id, off, &mut buf).unwrap();
            for (i, got) in buf.chunks(K4 as usize).enumerate() {
                let l = off / K4 + i as u64;
                let v = versions.get(&(id, l)).copied().unwrap_or(0);
                assert!(
                    got == &block(id, l, v)[..],
                    "extent {id} block {l} is not version {v}"
                );
            }
        }
    }
}

fn fragments(store: &ChunkStore) -> u64 {
    IDS.iter().map(|&id| store.fragments(id).unwrap()).sum()
}

#[test]
fn cleaner_restores_layout_after_relocated_home_writes() {
    cleaner_restores_layout_and_empties_segments_when_idle(false);
}

#[test]
fn cleaner_restores_layout_after_logged_small_writes() {
    cleaner_restores_layout_and_empties_segments_when_idle(true);
}

fn cleaner_restores_layout_and_empties_segments_when_idle(log_small_writes: bool) {
    let path = std::env::temp_dir().join(format!(
        "ferrite-cleaner-{}-{log_small_writes}",
        std::process::id()
    ));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let devs = vec![path.clone()];
    let opts = StoreOptions {
        journal_size: 4 << 20,
        extent_size_max: 32 << 20,
        backend: Backend::Uring,
        relocate_home: true,
        log_small_writes,
        clean_idle: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    ChunkStore::format(&devs, &opts).unwrap();
    let runtime = Runtime::new(Config::for_tests(1)).unwrap();
    let store = ChunkStore::open(&devs, &opts, &runtime.handle()).unwrap();

    // 72 MiB laid out in order, then 5000 random 4 KiB rewrites: each
    // home-writer round relocates its blocks to one new run, or each
    // rewrite is written to a new block.
    for id in IDS {
        store.create_extent(id, EXT).unwrap();
        for off in (0..EXT).step_by(1 << 20) {
            let data: Vec<u8> = (0..256).flat_map(|i| block(id, off / K4 + i, 0)).collect();
            store.write(id, off, &data).unwrap();
        }
    }
    let mut versions = HashMap::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for v in 1..=5000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = IDS[(x % 3) as usize];
        let l = (x >> 8) % (EXT / K4);
        store.write(id, l * K4, &block(id, l, v)).unwrap();
        versions.insert((id, l), v);
    }
    store.checkpoint().unwrap();
    let before = store.stats();
    let frag_before = fragments(&store);
    let (total, _) = store.capacity();
    let segments = total / (4 << 20);

    // Idle: the cleaner works, then settles (nothing left to move).
    let start = Instant::now();
    let mut last = before.cleaned_blocks;
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_secs(3) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the cleaner is still moving blocks after 90 s ({last} moved)"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = store.stats().cleaned_blocks;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    store.checkpoint().unwrap();
    let after = store.stats();
    let frag_after = fragments(&store);
    eprintln!(
        "cleaner: {} blocks moved in {:.1} s; fragments {frag_before} -> {frag_after}; \
         empty segments {} -> {} of {segments}; {} relocated home",
        after.cleaned_blocks,
        (last_change - start).as_secs_f64(),
        before.free_segments,
        after.free_segments,
        after.relocated_blocks
    );
    if log_small_writes {
        assert_eq!(
            before.relocated_blocks, 0,
            "logged writes have nothing to write home"
        );
    } else {
        assert!(
            before.relocated_blocks > 0,
            "home writes must have been relocated"
        );
    }
    assert!(
        after.cleaned_blocks > 0,
        "the cleaner must have moved blocks"
    );
    assert!(
        frag_after * 4 < frag_before,
        "the extents must be back in (nearly) logical order: {frag_before} -> {frag_after} runs"
    );
    assert!(
        after.free_segments * 4 >= segments,
        "a quarter of the segments must be empty: {} of {segments}",
        after.free_segments
    );
    assert_eq!(after.checksum_errors, 0);
    verify(&store, &versions);

    store.close().unwrap();
    let store = ChunkStore::open(&devs, &opts, &runtime.handle()).unwrap();
    verify(&store, &versions);
    assert_eq!(
        fragments(&store),
        frag_after,
        "the layout survives a reopen"
    );
    store.close().unwrap();
    let _ = std::fs::remove_file(path);
}
